//! Backends of the store port ([`tidings_core::store::Store`]), chosen by `store.backend`:
//!
//! - [`embedded`]: tables in a redb file on local disk, for one process
//! - `scylla`: ScyllaDB; not built into this version, asking for it is a clear error

pub mod embedded;

use std::sync::Arc;
use tidings_core::config::Config;
use tidings_core::store::Store;
use tidings_core::{Error, Result};

/// Open the store the config names.
pub fn open(config: &Config) -> Result<Arc<dyn Store>> {
    match config.store.backend.as_str() {
        "embedded" => Ok(Arc::new(embedded::EmbeddedStore::open(
            &config.data_dir.join("store.redb"),
        )?)),
        other => Err(Error::invalid(
            "backend_unavailable",
            format!("store.backend `{other}` is not built into this binary (available: embedded)"),
        )),
    }
}
