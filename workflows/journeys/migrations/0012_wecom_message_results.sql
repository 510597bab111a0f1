-- WeCom messages' results (issue 24): `add_msg_template` answering a msgid means WeCom took the
-- message (status sent); whether it reached the customer WeCom tells later, per customer, through
-- `get_groupmsg_send_result`, which the WeCom sync reads back into the message's row
-- (workflows/journeys/channels/wecom_results.py):
--   ''           not read back yet (or no WeCom message);
--   delivered    sent to the customer (WeCom status 1);
--   not_friend   not sent: the customer is no longer the sender's contact (2);
--   limited      not sent: the customer had already received a group message (3, WeCom's limit);
--   expired      still not sent (0: the staff member never confirmed it) when reading back stopped;
--   unreadable   WeCom answered an error for the message (e.g. an unknown msgid);
--   none         nothing to read: the message was never taken (failed, unknown, skipped).
-- `wecom_checked`: when it was last asked (a message not sent yet is asked again later).
ALTER TABLE messages
    ADD COLUMN wecom_result text NOT NULL DEFAULT ''
        CHECK (wecom_result IN ('', 'delivered', 'not_friend', 'limited', 'expired', 'unreadable', 'none')),
    ADD COLUMN wecom_checked timestamptz;

-- The WeCom messages still to read back, oldest first. Its columns and predicate are none that an
-- outcome's UPDATE (status, detail, provider_id, update_time) changes, so that update stays a HOT
-- one (migration 0003) for every channel.
CREATE INDEX messages_wecom_unread ON messages (tenant_id, create_time)
    WHERE channel = 'wecom' AND wecom_result = '';
