//! Task accuracy (filled in by the tasks work).
