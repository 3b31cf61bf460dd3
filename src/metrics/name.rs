//! The label values the view keys its series by (application and namespace
//! names). A scrape walks every entry of a shard in order; a name kept in
//! the entry itself is read with it, where a name behind a pointer costs a
//! cache miss per entry and per family (at 100 000 applications, 40 % of a
//! scrape). Most names are short: they are kept inline. A longer one is
//! shared, one allocation per distinct name.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Longest name kept inline (the whole value is then 24 bytes, as large as
/// a shared one with its tag).
const INLINE: usize = 22;

#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Name {
    /// `name` inline when it fits; otherwise what `share` gives for it.
    pub fn new(name: &str, share: impl FnOnce(&str) -> Arc<str>) -> Name {
        if name.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Name(Repr::Inline {
                len: name.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Shared(share(name)))
        }
    }

    /// The name's bytes, for the exposition (no UTF-8 check: they were
    /// copied from a `str`).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(name) => name.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Copied whole from a `str`: always UTF-8.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(name) => name,
        }
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Name {
        Name::new(name, |name| Arc::from(name))
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_shared() {
        for name in [
            "",
            "shop",
            "a-name-of-22-bytes-xyz",
            "a-name-of-23-bytes-xyz!",
            "ünïcødé-ñame-ståying-inline",
        ] {
            let mut shared = false;
            let kept = Name::new(name, |n| {
                shared = true;
                Arc::from(n)
            });
            assert_eq!(kept.as_str(), name);
            assert_eq!(shared, name.len() > INLINE, "{name}");
            assert_eq!(kept, Name::from(name));
        }
        assert_eq!(std::mem::size_of::<Name>(), 24);
    }
}
