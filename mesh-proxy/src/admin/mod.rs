//! The admin API (in progress).
