-- Profile features: who the customer is. Valid from signup, so a customer who signs up after
-- a cutoff has no profile at that cutoff. Optional columns the import lacked come out NULL.
SELECT
    customer_id,
    signup_at,
    signup_at AS profile_at,
    age_band,
    region,
    income_band,
    acquisition_channel,
    preferred_contact_channel,
    contact_frequency,
    marketing_consent,
    profiling_consent,
    interest_sustainable,
    interest_premium,
    interest_deals
FROM customers
