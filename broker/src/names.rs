//! Topic, namespace and subscription names, checked once at the edge.
//!
//! A topic is `/namespace/topic`; both parts use letters, digits, `_` and
//! `-`. Partition `i` of a partitioned topic is `/namespace/topic-part-i`.

use std::fmt;

use crate::error::BrokerError;

const MAX_NAME_LEN: usize = 255;

/// A checked topic name: `/namespace/topic`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    full: String,
    slash: usize,
}

impl TopicName {
    /// Parses and checks `name`.
    pub fn parse(name: &str) -> Result<TopicName, BrokerError> {
        let invalid = |reason: &str| BrokerError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let rest = name
            .strip_prefix('/')
            .ok_or_else(|| invalid("a topic name has the form /namespace/topic"))?;
        let (namespace, topic) = rest
            .split_once('/')
            .ok_or_else(|| invalid("a topic name has the form /namespace/topic"))?;

        check_part(namespace).map_err(|reason| invalid(&format!("namespace {reason}")))?;
        check_part(topic).map_err(|reason| invalid(&format!("topic {reason}")))?;
        Ok(TopicName {
            full: name.to_string(),
            slash: namespace.len() + 1,
        })
    }

    /// The name of partition `index` of this topic.
    pub fn partition(&self, index: u32) -> TopicName {
        TopicName {
            full: format!("{}-part-{index}", self.full),
            slash: self.slash,
        }
    }

    /// The namespace part, without slashes.
    pub fn namespace(&self) -> &str {
        &self.full[1..self.slash]
    }

    /// The whole name, `/namespace/topic`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The partition index when this is a `-part-N` name.
    pub fn partition_index(&self) -> Option<u32> {
        let (_, index) = self.full[self.slash..].rsplit_once("-part-")?;
        index.parse().ok()
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Checks a namespace name.
pub fn check_namespace(name: &str) -> Result<(), BrokerError> {
    check_part(name).map_err(|reason| BrokerError::InvalidName {
        name: name.to_string(),
        reason: format!("namespace {reason}"),
    })
}

/// Checks a subscription, producer or consumer name: any printable text
/// without control characters, 1 to 255 bytes.
pub fn check_label(kind: &str, name: &str) -> Result<(), BrokerError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BrokerError::InvalidName {
            name: name.to_string(),
            reason: format!("{kind} name {reason}"),
        }),
        None => Ok(()),
    }
}

fn check_part(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("must not be empty");
    }
    if part.len() > MAX_NAME_LEN {
        return Err("is longer than 255 bytes");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !part.chars().all(allowed) {
        return Err("may only hold letters, digits, '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_name_parses_into_its_parts() {
        let name = TopicName::parse("/default/orders-eu_1").unwrap();
        assert_eq!(name.namespace(), "default");
        assert_eq!(name.as_str(), "/default/orders-eu_1");
        assert_eq!(name.partition_index(), None);
    }

    #[test]
    fn partitions_are_named_with_a_part_suffix() {
        let name = TopicName::parse("/default/orders").unwrap();
        let part = name.partition(3);
        assert_eq!(part.as_str(), "/default/orders-part-3");
        assert_eq!(part.partition_index(), Some(3));
        assert_eq!(TopicName::parse(part.as_str()).unwrap(), part);
    }

    #[test]
    fn malformed_names_are_refused_with_the_reason() {
        for bad in [
            "default/x",
            "/default",
            "/default/",
            "//x",
            "/a/b/c",
            "/de fault/x",
            "/a/b.c",
        ] {
            let error = TopicName::parse(bad).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn labels_refuse_empty_and_control_characters() {
        assert!(check_label("subscription", "sub-1").is_ok());
        assert!(check_label("subscription", "").is_err());
        assert!(check_label("consumer", "a\nb").is_err());
    }
}
