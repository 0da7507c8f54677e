//! External channels, one folder each.

pub mod webhook;
