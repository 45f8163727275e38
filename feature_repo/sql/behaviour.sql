-- Behavioural features per customer as of $cutoff (inclusive), from the events table.
-- Cart abandonment: a day with a cart add and no purchase on that day.
-- last_engagement_at (session, open or click) is stored so its age is exact at request time.
WITH ev AS (
    SELECT customer_id, "timestamp" AS ts, event_type, date_trunc('day', "timestamp") AS day
    FROM events
    WHERE "timestamp" <= $cutoff
),
purchase_days AS (
    SELECT DISTINCT customer_id, date_trunc('day', "timestamp") AS day
    FROM transactions
    WHERE "timestamp" <= $cutoff AND "timestamp" > $cutoff - INTERVAL 90 DAY AND amount > 0
),
cart_days AS (
    SELECT DISTINCT customer_id, day
    FROM ev
    WHERE event_type = 'cart_add' AND ts > $cutoff - INTERVAL 90 DAY
),
abandonment AS (
    SELECT c.customer_id,
           count(*) AS cart_days_90d,
           count(*) FILTER (WHERE p.day IS NULL) AS abandoned_cart_days_90d
    FROM cart_days c
    LEFT JOIN purchase_days p USING (customer_id, day)
    GROUP BY c.customer_id
),
universe AS (
    SELECT customer_id FROM customers WHERE signup_at <= $cutoff
    UNION
    SELECT DISTINCT customer_id FROM ev
),
counts AS (
    SELECT customer_id,
           count(*) FILTER (WHERE event_type = 'session' AND ts > $cutoff - INTERVAL 30 DAY) AS sessions_30d,
           count(*) FILTER (WHERE event_type = 'session' AND ts > $cutoff - INTERVAL 90 DAY) AS sessions_90d,
           count(*) FILTER (WHERE event_type = 'product_view' AND ts > $cutoff - INTERVAL 30 DAY) AS product_views_30d,
           count(*) FILTER (WHERE event_type = 'product_view' AND ts > $cutoff - INTERVAL 90 DAY) AS product_views_90d,
           count(*) FILTER (WHERE event_type = 'cart_add' AND ts > $cutoff - INTERVAL 30 DAY) AS cart_adds_30d,
           count(*) FILTER (WHERE event_type = 'cart_add' AND ts > $cutoff - INTERVAL 90 DAY) AS cart_adds_90d,
           count(*) FILTER (WHERE event_type = 'email_send' AND ts > $cutoff - INTERVAL 90 DAY) AS email_sends_90d,
           count(*) FILTER (WHERE event_type = 'email_open' AND ts > $cutoff - INTERVAL 90 DAY) AS email_opens_90d,
           count(*) FILTER (WHERE event_type = 'email_click' AND ts > $cutoff - INTERVAL 90 DAY) AS email_clicks_90d,
           count(*) FILTER (WHERE event_type = 'email_send') AS email_sends_total,
           count(*) FILTER (WHERE event_type = 'email_open') AS email_opens_total,
           count(*) FILTER (WHERE event_type = 'email_unsubscribe') > 0 AS unsubscribed,
           count(*) FILTER (WHERE event_type = 'support_contact' AND ts > $cutoff - INTERVAL 90 DAY) AS support_contacts_90d,
           count(*) FILTER (WHERE event_type = 'support_contact' AND ts > $cutoff - INTERVAL 365 DAY) AS support_contacts_365d,
           max(ts) FILTER (WHERE event_type IN ('session', 'email_open', 'email_click')) AS last_engagement_at
    FROM ev
    GROUP BY customer_id
)
SELECT
    u.customer_id,
    $cutoff AS snapshot_at,
    coalesce(c.sessions_30d, 0) AS sessions_30d,
    coalesce(c.sessions_90d, 0) AS sessions_90d,
    coalesce(c.sessions_30d / greatest(c.sessions_90d / 3.0, 1.0 / 3.0), 0) AS sessions_trend_30d_90d,
    coalesce(c.product_views_30d, 0) AS product_views_30d,
    coalesce(c.product_views_90d, 0) AS product_views_90d,
    coalesce(c.cart_adds_30d, 0) AS cart_adds_30d,
    coalesce(c.cart_adds_90d, 0) AS cart_adds_90d,
    coalesce(a.abandoned_cart_days_90d, 0) AS abandoned_cart_days_90d,
    a.abandoned_cart_days_90d / a.cart_days_90d AS cart_abandonment_rate_90d,
    coalesce(c.email_sends_90d, 0) AS email_sends_90d,
    c.email_opens_90d / nullif(c.email_sends_90d, 0) AS email_open_rate_90d,
    c.email_clicks_90d / nullif(c.email_sends_90d, 0) AS email_click_rate_90d,
    c.email_opens_total / nullif(c.email_sends_total, 0) AS email_open_rate_total,
    coalesce(c.unsubscribed, false) AS unsubscribed,
    coalesce(c.support_contacts_90d, 0) AS support_contacts_90d,
    coalesce(c.support_contacts_365d, 0) AS support_contacts_365d,
    c.last_engagement_at
FROM universe u
LEFT JOIN counts c USING (customer_id)
LEFT JOIN abandonment a USING (customer_id)
