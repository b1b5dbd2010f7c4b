//! Packing a page's events into requests of bounded size: the batching the SIEM sinks share
//! (`splunk_hec`, `elasticsearch`, `sentinel`), each giving only what one event costs in its own
//! framing.

/// What to do with an event that does not fit even in a request of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Oversized {
    /// Send it alone (the limit is ours, the destination's own is larger).
    Alone,
    /// Keep it out of every request: the destination refuses it whatever we do.
    Refuse,
}

/// A page's events in requests, in page order.
#[derive(Debug, Default)]
pub(super) struct Packed<'a> {
    /// Each request's events.
    pub requests: Vec<Vec<&'a [u8]>>,
    /// With [`Oversized::Refuse`], the events too large for any request.
    pub oversized: Vec<&'a [u8]>,
}

/// Each event of a page (its lines, without the `\n`).
pub(super) fn events(lines: &[u8]) -> impl Iterator<Item = &[u8]> {
    lines.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// Packs `events` into requests of at most `max` bytes, a request costing `base` plus
/// `cost(event)` for each of its events.
pub(super) fn pack<'a>(
    events: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
    base: usize,
    cost: impl Fn(&[u8]) -> usize,
    oversized: Oversized,
) -> Packed<'a> {
    let mut packed = Packed::default();
    let mut current: Vec<&[u8]> = Vec::new();
    let mut size = base;
    for event in events {
        let c = cost(event);
        if base + c > max {
            if oversized == Oversized::Refuse {
                packed.oversized.push(event);
                continue;
            }
            if !current.is_empty() {
                packed.requests.push(std::mem::take(&mut current));
            }
            packed.requests.push(vec![event]);
            size = base;
            continue;
        }
        if size + c > max {
            packed.requests.push(std::mem::take(&mut current));
            size = base;
        }
        current.push(event);
        size += c;
    }
    if !current.is_empty() {
        packed.requests.push(current);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(p: &Packed<'_>) -> Vec<Vec<usize>> {
        p.requests
            .iter()
            .map(|r| r.iter().map(|e| e.len()).collect())
            .collect()
    }

    #[test]
    fn requests_stay_within_the_limit_in_page_order() {
        let lines = b"aaaa\nbbbb\ncc\ndddddd\n\ne\n";
        // A request costs 2, each event its length plus 1: at most 10 bytes.
        let p = pack(events(lines), 10, 2, |e| e.len() + 1, Oversized::Alone);
        assert_eq!(sizes(&p), vec![vec![4], vec![4, 2], vec![6], vec![1]]);
        for r in &p.requests {
            assert!(r.len() == 1 || 2 + r.iter().map(|e| e.len() + 1).sum::<usize>() <= 10);
        }
        let order: Vec<&[u8]> = p.requests.concat();
        assert_eq!(order, events(lines).collect::<Vec<_>>());
    }

    #[test]
    fn an_event_over_the_limit_goes_alone_or_is_kept_out() {
        let lines = b"aa\nxxxxxxxxxxxx\nbb\n";
        let alone = pack(events(lines), 8, 0, |e| e.len(), Oversized::Alone);
        assert_eq!(sizes(&alone), vec![vec![2], vec![12], vec![2]]);
        assert!(alone.oversized.is_empty());
        let refused = pack(events(lines), 8, 0, |e| e.len(), Oversized::Refuse);
        assert_eq!(sizes(&refused), vec![vec![2, 2]]);
        assert_eq!(refused.oversized, vec![&b"xxxxxxxxxxxx"[..]]);
    }
}
