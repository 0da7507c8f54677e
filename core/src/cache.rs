//! A bounded cache of the reads every request makes and that rarely change: a tenant by id,
//! the tenant an API key belongs to, a template version (never changes once saved) and a
//! template's latest version. On a distributed store each is a network round trip per API
//! call or routed message; here it is a hash lookup.
//!
//! How fresh: a change made through this process (a rotation, a disable, a webhook URL, a
//! template save) forgets the cached entries at once ([`HotReads::forget_tenant`],
//! [`HotReads::forget_template`]). A change made on another node is seen within
//! [`FRESH_FOR`]. An API key is cached as the id of its tenant only, and checked against the
//! tenant's current credentials on every request, so a rotated-out key stops working when the
//! tenant entry does.

use crate::error::Result;
use crate::model::{Template, Tenant};
use crate::store::Store;
use quick_cache::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an entry that can change elsewhere is used before it is read again.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// Entries kept per kind.
const CAPACITY: usize = 10_000;

type Stamped<T> = (T, Instant);

/// The cached reads of one process.
pub struct HotReads {
    tenants: Cache<String, Stamped<Arc<Tenant>>>,
    /// When each tenant was last forgotten: a read that started before it is not cached
    /// (it may hold what the change replaced).
    forgotten: Cache<String, Instant>,
    keys: Cache<String, Stamped<String>>,
    versions: Cache<(String, String, u64), Arc<Template>>,
    latest: Cache<(String, String), Stamped<Arc<Template>>>,
}

impl Default for HotReads {
    fn default() -> Self {
        HotReads {
            tenants: Cache::new(CAPACITY),
            forgotten: Cache::new(CAPACITY),
            keys: Cache::new(CAPACITY),
            versions: Cache::new(CAPACITY),
            latest: Cache::new(CAPACITY),
        }
    }
}

fn fresh<T: Clone>(e: Option<Stamped<T>>) -> Option<T> {
    e.filter(|(_, at)| at.elapsed() < FRESH_FOR).map(|(v, _)| v)
}

impl HotReads {
    /// The tenant `id` (unknown ones are not cached).
    pub async fn tenant(&self, store: &dyn Store, id: &str) -> Result<Option<Tenant>> {
        if let Some(t) = fresh(self.tenants.get(id)) {
            return Ok(Some((*t).clone()));
        }
        let started = Instant::now();
        let t = store.tenant(id).await?;
        if let Some(t) = &t {
            self.keep_tenant(t, started);
        }
        Ok(t)
    }

    /// Cache `t` as read from a store read that started at `started`, unless the tenant was
    /// changed through this process since.
    fn keep_tenant(&self, t: &Tenant, started: Instant) {
        if self.forgotten.get(&t.id).is_some_and(|at| at >= started) {
            return;
        }
        self.tenants
            .insert(t.id.clone(), (Arc::new(t.clone()), Instant::now()));
    }

    /// The tenant whose current or previous API key hashes to `hash`, as of the store's last
    /// index: the caller checks the hash against the tenant's credentials.
    pub async fn tenant_by_api_key_hash(
        &self,
        store: &dyn Store,
        hash: &str,
    ) -> Result<Option<Tenant>> {
        if let Some(id) = fresh(self.keys.get(hash)) {
            return self.tenant(store, &id).await;
        }
        let started = Instant::now();
        let t = store.tenant_by_api_key_hash(hash).await?;
        if let Some(t) = &t {
            self.keys
                .insert(hash.to_string(), (t.id.clone(), Instant::now()));
            self.keep_tenant(t, started);
        }
        Ok(t)
    }

    /// One saved version of a template (versions never change).
    pub async fn template_version(
        &self,
        store: &dyn Store,
        tenant: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<Template>> {
        let k = (tenant.to_string(), key.to_string(), version);
        if let Some(t) = self.versions.get(&k) {
            return Ok(Some((*t).clone()));
        }
        let t = store.template_version(tenant, key, version).await?;
        if let Some(t) = &t {
            self.versions.insert(k, Arc::new(t.clone()));
        }
        Ok(t)
    }

    /// The latest version of a template.
    pub async fn template(
        &self,
        store: &dyn Store,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Template>> {
        let k = (tenant.to_string(), key.to_string());
        if let Some(t) = fresh(self.latest.get(&k)) {
            return Ok(Some((*t).clone()));
        }
        let t = store.template(tenant, key).await?;
        if let Some(t) = &t {
            self.latest.insert(k, (Arc::new(t.clone()), Instant::now()));
        }
        Ok(t)
    }

    /// Forget a tenant changed by this process.
    pub fn forget_tenant(&self, id: &str) {
        self.forgotten.insert(id.to_string(), Instant::now());
        self.tenants.remove(id);
    }

    /// Forget a template's latest version, saved by this process.
    pub fn forget_template(&self, tenant: &str, key: &str) {
        self.latest.remove(&(tenant.to_string(), key.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: "n".into(),
            api_key_hash: "h".into(),
            jwt_secret: "s".into(),
            webhook_url: None,
            webhook_secret: "w".into(),
            created_at_ms: 0,
            previous: None,
            disabled: false,
        }
    }

    /// A read that started before a change through this process is not cached: it may hold
    /// what the change replaced (a disabled tenant must not come back from the cache).
    #[test]
    fn a_read_older_than_a_change_is_not_kept() {
        let hot = HotReads::default();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        hot.forget_tenant("t");
        hot.keep_tenant(&tenant("t"), before);
        assert!(hot.tenants.get("t").is_none());
        std::thread::sleep(Duration::from_millis(2));
        hot.keep_tenant(&tenant("t"), Instant::now());
        assert!(hot.tenants.get("t").is_some());
    }

    #[test]
    fn entries_go_stale() {
        let now = Instant::now();
        assert_eq!(fresh(Some((1, now))), Some(1));
        let old = now.checked_sub(FRESH_FOR + Duration::from_millis(1));
        if let Some(old) = old {
            assert_eq!(fresh(Some((1, old))), None);
        }
    }
}
