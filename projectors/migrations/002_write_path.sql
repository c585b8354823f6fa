-- Cheaper writes for the fold, which inserts a row into event_outcomes for every event.

-- No query reads outcomes by object (history comes from object_versions, audit by actor
-- has its own index), so this index was pure write cost: one more btree insert per event.
DROP INDEX IF EXISTS event_outcomes_object;

-- Room on every page of objects, which the fold rewrites in place, so an update that
-- leaves the indexed columns alone (a metadata patch: most events) can stay on its page
-- as a HOT update and touch no index. New pages only; `blobledger replay` rebuilds all.
ALTER TABLE objects SET (fillfactor = 70);
