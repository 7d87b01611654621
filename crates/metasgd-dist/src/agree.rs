//! How the ranks agree that a collective operation may go on.

use metasgd_core::{Error, Result};

use crate::Collective;

/// The longest error text sent to the other ranks, in bytes.
const MAX_CAUSE: usize = 4096;

/// Every rank reports whether its part of `operation` failed; if any did,
/// every rank returns an error: its own, or [`Error::PeerFailed`] naming the
/// first rank that failed, the operation and that rank's error text.
/// Collective: every rank calls it at the same point.
pub(crate) fn agree<C: Collective>(
    comm: &C,
    operation: &'static str,
    local: Option<&Error>,
) -> Result<()> {
    match first_failure(comm, local) {
        None => Ok(()),
        Some(_) if local.is_some() => Err(local.cloned().expect("a local error")),
        Some((rank, cause)) => Err(Error::PeerFailed {
            rank,
            operation,
            cause,
        }),
    }
}

/// [`agree`], but every rank returns the very same error, the failing one
/// included: [`Error::PeerFailed`] naming the first rank that failed and its
/// error text. Collective.
pub(crate) fn agree_uniform<C: Collective>(
    comm: &C,
    operation: &'static str,
    local: Option<&Error>,
) -> Result<()> {
    match first_failure(comm, local) {
        None => Ok(()),
        Some((rank, cause)) => Err(Error::PeerFailed {
            rank,
            operation,
            cause,
        }),
    }
}

/// The first failing rank and its error text, known to every rank.
fn first_failure<C: Collective>(comm: &C, local: Option<&Error>) -> Option<(usize, String)> {
    let text = local.map(|e| {
        let mut t = e.to_string();
        if t.len() > MAX_CAUSE {
            let mut cut = MAX_CAUSE;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        t
    });
    // 0: fine; n + 1: failed with an n-byte message.
    let codes = comm.all_gather_u64(text.as_ref().map_or(0, |t| t.len() as u64 + 1));
    let rank = codes.iter().position(|&c| c != 0)?;
    // Every rank learns the first failing rank's message.
    let width = codes
        .iter()
        .map(|&c| c.saturating_sub(1))
        .max()
        .unwrap_or(0) as usize;
    let mut mine = vec![0u8; width];
    if let Some(t) = &text {
        mine[..t.len()].copy_from_slice(t.as_bytes());
    }
    let mut all = vec![0u8; width * codes.len()];
    comm.all_gather(&mine, &mut all);
    let len = (codes[rank] - 1) as usize;
    let cause = String::from_utf8_lossy(&all[rank * width..rank * width + len]).into_owned();
    Some((rank, cause))
}
