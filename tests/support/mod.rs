//! Shared helpers for black-box tests.

pub mod s3_server;
