//! A hint that the current task's writes are on the urgent path. Backends may let such
//! writes overtake bulk ones waiting for the same disk: the embedded engine puts them in the
//! next group commit ahead of everything queued (a low fan-out can queue thousands of rows).
//! A backend that cannot order writes ignores the hint; nothing depends on it for correctness.

use std::future::Future;

tokio::task_local! {
    static URGENT: bool;
}

/// Run `f` with its writes marked urgent. The mark belongs to the task: a task spawned from
/// inside `f` must be wrapped again (see [`is_urgent`]).
pub async fn urgent<F: Future>(f: F) -> F::Output {
    URGENT.scope(true, f).await
}

/// Whether the current task runs inside [`urgent`].
pub fn is_urgent() -> bool {
    URGENT.try_with(|u| *u).unwrap_or(false)
}

/// Run `f` urgent when `yes`, as is otherwise.
pub async fn urgent_if<F: Future>(yes: bool, f: F) -> F::Output {
    if yes {
        urgent(f).await
    } else {
        f.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mark_holds_inside_the_scope_only() {
        assert!(!is_urgent());
        assert!(urgent(async { is_urgent() }).await);
        assert!(!urgent_if(false, async { is_urgent() }).await);
        assert!(!is_urgent());
    }
}
