//! The ADS client (in progress).
