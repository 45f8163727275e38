"""The embedded Feast registry file, replaced atomically.

Feast's file registry store truncates ``registry.db`` and then writes it: a process killed in
between (an ``indicators score`` or ``features`` stopped mid-apply) leaves an empty registry,
and no view can be read or served until the next apply. This store writes a temporary file,
syncs it and renames it over the old one, so a reader sees the old registry or the new one.
Selected by ``registry_store_type`` in ``training.features.store.repo_config``.
"""

from __future__ import annotations

import os
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

STORE_TYPE = "training.features.registry_file.AtomicFileRegistryStore"


class AtomicFileRegistryStore(FileRegistryStore):
    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f"{self._filepath.name}.{os.getpid()}.partial")
        try:
            with open(partial, mode="wb", buffering=0) as out:
                out.write(registry_proto.SerializeToString())
                os.fsync(out.fileno())
            os.replace(partial, self._filepath)
        finally:
            partial.unlink(missing_ok=True)
