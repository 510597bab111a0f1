-- What the journey report (GetJourneyReport) measures per member beyond the holdout arm: the arm a
-- member took at each split (`{step id}:{arm}`, one per split it passed), for member journeys and
-- cohorts alike; and for member journeys, the funnel figures of each step the member went through,
-- written when the member leaves ({"welcome": {"entered": 1, "sent": 1}, ...}).

ALTER TABLE enrolments ADD COLUMN split_arms text[] NOT NULL DEFAULT '{}';
ALTER TABLE enrolments ADD COLUMN step_figures jsonb NOT NULL DEFAULT '{}';
ALTER TABLE cohort_members ADD COLUMN split_arms text[] NOT NULL DEFAULT '{}';
