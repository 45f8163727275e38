-- Transactional features per customer as of $cutoff (inclusive), from the canonical log.
-- Rows may be line items: order features read the orders of orders.sql, category shares
-- read the purchase lines.
-- A purchase is a distinct UTC purchase day with positive spend (BTYD convention);
-- refunds (negative amounts) are netted into revenue and counted in the refund rate.
-- Optional columns a log lacks are NULL here (see snapshots.connect), and so are the
-- features that read them (discount share, category shares).
-- Timestamps (first/last purchase) are stored so ages are computed exactly at request time.
-- Every float aggregate takes its inputs in sorted order (ORDER BY inside the aggregate):
-- DuckDB combines parallel partial sums in varying order, and the last bits then differed
-- between two builds of the same data. Means of 0/1 values are exact and need no order.
WITH lines AS (  -- for per-line features (category shares); orders come from orders.sql
    SELECT customer_id, amount, lower(category) AS category
    FROM transactions
    WHERE "timestamp" <= $cutoff AND amount <> 0
),
tx AS (
    SELECT customer_id, ts, amount, discount, date_trunc('day', ts) AS day
    FROM orders
    WHERE ts <= $cutoff
),
purchase_days AS (
    SELECT customer_id, day, sum(amount ORDER BY amount) AS day_amount
    FROM tx WHERE amount > 0
    GROUP BY customer_id, day
),
gaps AS (
    SELECT customer_id,
           date_diff('hour', lag(day) OVER (PARTITION BY customer_id ORDER BY day), day) / 24.0 AS gap_days
    FROM purchase_days
),
gap_stats AS (
    SELECT customer_id, avg(gap_days ORDER BY gap_days) AS gap_mean_days,
           stddev_samp(gap_days ORDER BY gap_days) AS gap_std_days
    FROM gaps WHERE gap_days IS NOT NULL
    GROUP BY customer_id
),
day_windows AS (
    SELECT customer_id,
           count(*) AS purchase_days_total,
           count(*) FILTER (WHERE day > $cutoff - INTERVAL 30 DAY) AS purchase_days_30d,
           count(*) FILTER (WHERE day > $cutoff - INTERVAL 90 DAY) AS purchase_days_90d,
           count(*) FILTER (WHERE day > $cutoff - INTERVAL 180 DAY) AS purchase_days_180d,
           count(*) FILTER (WHERE day > $cutoff - INTERVAL 365 DAY) AS purchase_days_365d
    FROM purchase_days
    GROUP BY customer_id
),
tx_stats AS (
    SELECT customer_id,
           min(ts) FILTER (WHERE amount > 0) AS first_purchase_at,
           max(ts) FILTER (WHERE amount > 0) AS last_purchase_at,
           sum(amount ORDER BY amount) AS revenue_total,
           coalesce(sum(amount ORDER BY amount) FILTER (WHERE ts > $cutoff - INTERVAL 30 DAY), 0) AS revenue_30d,
           coalesce(sum(amount ORDER BY amount) FILTER (WHERE ts > $cutoff - INTERVAL 90 DAY), 0) AS revenue_90d,
           coalesce(sum(amount ORDER BY amount) FILTER (WHERE ts > $cutoff - INTERVAL 180 DAY), 0) AS revenue_180d,
           coalesce(sum(amount ORDER BY amount) FILTER (WHERE ts > $cutoff - INTERVAL 365 DAY), 0) AS revenue_365d,
           avg(amount ORDER BY amount) FILTER (WHERE amount > 0) AS avg_order_value,
           max(amount) FILTER (WHERE amount > 0) AS max_order_value,
           count(*) FILTER (WHERE amount > 0) AS orders_total,
           count(*) FILTER (WHERE amount < 0) AS refunds_total,
           coalesce(-sum(amount ORDER BY amount) FILTER (WHERE amount < 0), 0) AS refund_amount_total,
           avg((discount > 0)::DOUBLE) FILTER (WHERE amount > 0) AS discount_share
    FROM tx
    GROUP BY customer_id
),
category_stats AS (  -- over purchase lines: an order may span categories
    SELECT customer_id,
           avg((category = 'apparel')::DOUBLE) AS share_apparel,
           avg((category = 'home')::DOUBLE) AS share_home,
           avg((category = 'electronics')::DOUBLE) AS share_electronics,
           avg((category = 'beauty')::DOUBLE) AS share_beauty,
           avg((category = 'grocery')::DOUBLE) AS share_grocery,
           avg((category = 'sustainable')::DOUBLE) AS share_sustainable,
           count(DISTINCT category) AS category_count
    FROM lines
    WHERE amount > 0
    GROUP BY customer_id
),
universe AS (
    SELECT customer_id FROM customers WHERE signup_at <= $cutoff
    UNION
    SELECT DISTINCT customer_id FROM transactions WHERE "timestamp" <= $cutoff
),
category_entropy AS (
    SELECT customer_id, abs(sum(p * ln(p) ORDER BY p)) AS category_entropy
    FROM (
        SELECT customer_id, count(*) / sum(count(*)) OVER (PARTITION BY customer_id) AS p
        FROM lines WHERE amount > 0 AND category IS NOT NULL
        GROUP BY customer_id, category
    )
    GROUP BY customer_id
)
SELECT
    u.customer_id,
    $cutoff AS snapshot_at,
    s.first_purchase_at,
    s.last_purchase_at,
    coalesce(d.purchase_days_total, 0) AS purchase_days_total,
    coalesce(d.purchase_days_30d, 0) AS purchase_days_30d,
    coalesce(d.purchase_days_90d, 0) AS purchase_days_90d,
    coalesce(d.purchase_days_180d, 0) AS purchase_days_180d,
    coalesce(d.purchase_days_365d, 0) AS purchase_days_365d,
    coalesce(s.revenue_total, 0) AS revenue_total,
    coalesce(s.revenue_30d, 0) AS revenue_30d,
    coalesce(s.revenue_90d, 0) AS revenue_90d,
    coalesce(s.revenue_180d, 0) AS revenue_180d,
    coalesce(s.revenue_365d, 0) AS revenue_365d,
    s.avg_order_value,
    s.max_order_value,
    coalesce(s.orders_total, 0) AS orders_total,
    g.gap_mean_days,
    g.gap_std_days,
    coalesce(d.purchase_days_90d, 0) / greatest(coalesce(d.purchase_days_365d, 0) / 4.0, 0.25) AS purchase_trend_90d_365d,
    coalesce(s.revenue_90d / greatest(abs(s.revenue_365d) / 4.0, 1.0), 0) AS revenue_trend_90d_365d,
    coalesce(s.refunds_total / greatest(s.orders_total, 1), 0) AS refund_rate,
    coalesce(s.refund_amount_total / greatest(s.revenue_total + s.refund_amount_total, 1.0), 0) AS refund_amount_share,
    s.discount_share,
    c.share_apparel,
    c.share_home,
    c.share_electronics,
    c.share_beauty,
    c.share_grocery,
    c.share_sustainable,
    coalesce(c.category_count, 0) AS category_count,
    coalesce(e.category_entropy, 0) AS category_entropy
FROM universe u
LEFT JOIN tx_stats s USING (customer_id)
LEFT JOIN day_windows d USING (customer_id)
LEFT JOIN gap_stats g USING (customer_id)
LEFT JOIN category_stats c USING (customer_id)
LEFT JOIN category_entropy e USING (customer_id)
