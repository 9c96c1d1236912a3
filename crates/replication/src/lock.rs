//! The crate's one lock-poisoning policy.
//!
//! Every `std::sync::Mutex` here guards a short critical section that never awaits
//! and leaves its data consistent at every step (a map insert or removal, an epoch
//! bump, taking or setting an `Option`), so a panic in another holder cannot leave
//! a half-made change behind. A poisoned lock is therefore recovered, never treated
//! as an error and never skipped: skipping would silently drop a stop, a failure
//! record or a node address.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the guard if a holder panicked (see the module docs).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = std::sync::Arc::clone(&m);
        let poisoned = std::thread::spawn(move || {
            let mut g = m2.lock().expect("not poisoned yet");
            g.push(2);
            panic!("a holder panics");
        })
        .join();
        assert!(poisoned.is_err());
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), vec![1, 2, 3]);
    }
}
