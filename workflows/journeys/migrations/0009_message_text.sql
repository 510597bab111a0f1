-- What a message said: the subject and body rendered for the member, written with the row when
-- the send is claimed (or, for a member run's send that the provider certainly did not take, when
-- it is claimed again). NULL for a send skipped before it was rendered, and for rows written
-- before this migration. Personal text (it may name the member): kept as long as the row, and
-- set to '[erased]' when the member is erased. Written by the INSERT, never by the outcome's
-- UPDATE, so that update stays a HOT one (0003).
ALTER TABLE messages ADD COLUMN subject text, ADD COLUMN body text;
