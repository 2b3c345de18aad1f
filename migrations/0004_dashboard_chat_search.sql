-- The live chat page's list (src/dashboard/chats.ts): newest chats first, paged by (created_at, id), and a
-- search by owner username or workspace name prefix, case-insensitive. text_pattern_ops lets LIKE 'abc%'
-- use the index whatever the database's collation.
CREATE INDEX chats_created_at_id_idx ON chats (created_at DESC, id DESC);
CREATE INDEX users_lower_username_pattern_idx ON users (lower(username) text_pattern_ops);
CREATE INDEX workspaces_lower_name_pattern_idx ON workspaces (lower(name) text_pattern_ops);
