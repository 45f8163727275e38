-- Orders from the transaction log's lines, built once per connection and filtered by time in
-- each snapshot (transactions.sql). An order is the lines that share a customer, an order_id
-- and a time, its purchase lines apart from its refund lines; a line without an order_id is
-- an order of its own. Every line of an order has the order's time, so filtering orders by
-- time is filtering lines by time: no snapshot sees a line after its cutoff.
CREATE TEMP TABLE IF NOT EXISTS orders AS
SELECT customer_id, "timestamp" AS ts, sum(amount ORDER BY amount) AS amount, max(discount) AS discount
FROM transactions
WHERE order_id IS NOT NULL AND amount <> 0
GROUP BY customer_id, order_id, "timestamp", amount > 0
UNION ALL
SELECT customer_id, "timestamp" AS ts, amount, discount
FROM transactions
WHERE order_id IS NULL AND amount <> 0
