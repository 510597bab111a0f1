-- When each entry or exit happened, beside when it was written (issue 19): the latest time of the
-- tagging facts and tag changes that moved the member, or the as_of of a whole evaluation. NULL in
-- entries written before: readers take create_time.
ALTER TABLE feed ADD COLUMN occur_time timestamptz;
