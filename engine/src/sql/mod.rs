//! The SQL-ish language (being written).
