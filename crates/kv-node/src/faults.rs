//! Test-only fault injection (`--enable-fault-injection`): the historical failure
//! modes of the DCP conversation, on demand, so the replication layer can be tested
//! against them with real nodes. Disabled nodes answer the admin routes with 404 and
//! never consult the list.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One injected fault.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The consumer never answers ADD_STREAM for this vbucket.
    DropAddStreamResponse {
        /// The vbucket.
        vbucket: u16,
    },
    /// The consumer answers ADD_STREAM for this vbucket `ms` late.
    DelayAddStreamResponse {
        /// The vbucket.
        vbucket: u16,
        /// Delay in milliseconds.
        ms: u64,
    },
    /// The producer ends the stream with `reason` right after accepting it.
    EndStreamAfterStreamReq {
        /// The vbucket.
        vbucket: u16,
        /// STREAM_END reason.
        reason: u32,
    },
    /// The producer answers the STREAM_REQ for this vbucket with `status`.
    StreamReqStatus {
        /// The vbucket.
        vbucket: u16,
        /// The status to answer with.
        status: u16,
    },
    /// The next DCP connection is closed after `frames` frames.
    CloseAfterFrames {
        /// Frames before the close.
        frames: u64,
    },
    /// DCP connections stop reading for `ms` milliseconds.
    Stall {
        /// Milliseconds.
        ms: u64,
    },
}

/// The node's fault list.
#[derive(Debug)]
pub struct Faults {
    enabled: bool,
    list: Mutex<Vec<Fault>>,
}

impl Faults {
    /// A list; `enabled` false makes it permanently empty.
    #[must_use]
    pub fn new(enabled: bool) -> Faults {
        Faults {
            enabled,
            list: Mutex::new(Vec::new()),
        }
    }

    /// Whether fault injection exists on this node.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a fault (ignored when disabled).
    pub fn add(&self, f: Fault) {
        if self.enabled {
            self.lock().push(f);
        }
    }

    /// Every active fault.
    #[must_use]
    pub fn list(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The first fault matching `pred`, if enabled.
    pub fn find<T>(&self, pred: impl Fn(&Fault) -> Option<T>) -> Option<T> {
        if !self.enabled {
            return None;
        }
        self.lock().iter().find_map(pred)
    }

    /// Takes (removes) the first `close_after_frames` fault: it applies to the next
    /// DCP connection only.
    pub fn take_close_after_frames(&self) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let mut l = self.lock();
        let i = l
            .iter()
            .position(|f| matches!(f, Fault::CloseAfterFrames { .. }))?;
        match l.remove(i) {
            Fault::CloseAfterFrames { frames } => Some(frames),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_the_documented_json() {
        let f: Fault = serde_json::from_str(r#"{"kind":"drop_add_stream_response","vbucket":3}"#)
            .expect("parses");
        assert_eq!(f, Fault::DropAddStreamResponse { vbucket: 3 });
        let f: Fault = serde_json::from_str(
            r#"{"kind":"end_stream_after_stream_req","vbucket":1,"reason":2}"#,
        )
        .expect("parses");
        assert_eq!(
            f,
            Fault::EndStreamAfterStreamReq {
                vbucket: 1,
                reason: 2
            }
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"nope"}"#).is_err());
    }

    #[test]
    fn disabled_faults_stay_empty_and_close_after_frames_is_taken_once() {
        let off = Faults::new(false);
        off.add(Fault::Stall { ms: 5 });
        assert!(off.list().is_empty());
        let on = Faults::new(true);
        on.add(Fault::CloseAfterFrames { frames: 7 });
        assert_eq!(on.take_close_after_frames(), Some(7));
        assert_eq!(on.take_close_after_frames(), None);
    }
}
