-- Who ended an operator's tag, and why (the adding operator and reason stay in set_by / reason).
ALTER TABLE member_tags
    ADD COLUMN removed_by     text NOT NULL DEFAULT '',
    ADD COLUMN removed_reason text NOT NULL DEFAULT '';
