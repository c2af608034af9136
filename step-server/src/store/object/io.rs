//! Small helpers every part of the object store uses: the one mapping of
//! `object_store` errors, and a poison-proof lock.

use std::sync::{Mutex, MutexGuard};

use crate::store::api::StoreError;

/// The one place `object_store` errors become [`StoreError`]s.
pub(super) fn store_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        // HTTP failures after retries: connection refused, 5xx, timeouts.
        object_store::Error::Generic { .. } => StoreError::Unavailable(e.to_string()),
        other => StoreError::Other(Box::new(other)),
    }
}

pub(super) fn other(msg: impl Into<String>) -> StoreError {
    StoreError::Other(msg.into().into())
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
