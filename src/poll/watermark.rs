//! What a stream's cursor keeps between polls and how it moves: server
//! timestamps (never the local clock, POLLING.md §6 step 11), the overlap
//! read again below a timestamp watermark, and how far a read over pages
//! that moved may advance it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::Listing;
use crate::store::PollCursor;

/// Re-read margin below a timestamp watermark (POLLING.md §6 step 6).
pub(super) const OVERLAP_SECONDS: i64 = 120;

/// An RFC 3339 timestamp of an API object as epoch seconds.
pub(in crate::poll) fn server_time(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
}

/// Epoch seconds as RFC 3339 UTC text, as `since` parameters take it.
pub(in crate::poll) fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The items of a list read oldest update first and paged by offset
/// that a watermark may move over: all of them, unless an item (by `id`)
/// showed up twice. It was then updated while the pages were read and
/// moved to the end, shifting the later pages by one, so that the item
/// after a later page boundary may have been skipped: only the pages up
/// to the one it was first read on are then certain (nothing on them is
/// newer than the skipped item), and the next read goes over the rest
/// again (POLLING.md §7 scenario 13).
pub(in crate::poll) fn settled(list: &Listing) -> &[Value] {
    let mut first = BTreeMap::new();
    let mut end = list.items.len();
    let mut page = 0;
    for (i, item) in list.items.iter().enumerate() {
        while list.page_ends.get(page).is_some_and(|e| *e <= i) {
            page += 1;
        }
        let Some(id) = item["id"].as_i64() else {
            continue;
        };
        match first.get(&id) {
            Some(&first_page) => {
                end = end.min(list.page_ends.get(first_page).copied().unwrap_or(end));
            }
            None => {
                first.insert(id, page);
            }
        }
    }
    &list.items[..end]
}

/// What a stream's cursor keeps in its watermark (JSON), when it keeps
/// one that reads as `T`.
pub(in crate::poll) fn mark_of<T: serde::de::DeserializeOwned>(cursor: &PollCursor) -> Option<T> {
    serde_json::from_str(cursor.watermark.as_deref()?).ok()
}

/// The commits stream's watermark of one branch: the head last read and
/// its commit time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(in crate::poll) struct HeadMark {
    pub(in crate::poll) sha: String,
    /// Server epoch seconds.
    pub(in crate::poll) at: i64,
    /// The next page of a first listing that did not reach the start of
    /// the window (a `Link` URL, verbatim): later polls go on from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::poll) backfill: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_watermark_moves_over_every_item_read_unless_one_moved_while_paging() {
        let item = |id: i64| json!({"id": id});
        let ids = |pages: &[Vec<Value>]| -> Vec<i64> {
            let list: Listing = pages.iter().cloned().collect();
            settled(&list)
                .iter()
                .filter_map(|i| i["id"].as_i64())
                .collect()
        };
        let pages = vec![
            vec![item(1), item(2)],
            vec![item(3), item(4)],
            vec![item(5)],
        ];
        assert_eq!(ids(&pages), [1, 2, 3, 4, 5]);
        // #3 was updated after its page was read: it shows up again at the
        // end, and the first item of the next page may have been skipped;
        // only the pages up to #3's first are certain.
        let mut moved = pages.clone();
        moved[2].push(item(3));
        assert_eq!(ids(&moved), [1, 2, 3, 4]);
        moved[2].push(item(1));
        assert_eq!(ids(&moved), [1, 2]);
        assert!(ids(&[]).is_empty());
    }
}
