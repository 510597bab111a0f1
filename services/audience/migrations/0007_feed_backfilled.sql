-- An entry or exit caused only by history an import loaded (issue 20: tagging's back-filled feed
-- entries) is history itself: membership follows it, journeys do not enrol on it.
ALTER TABLE feed ADD COLUMN backfilled boolean NOT NULL DEFAULT false;
