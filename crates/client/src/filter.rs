//! Tag subscriptions: `"*"` (everything), `"TagA"`, or `"TagA || TagB"`. The broker filters by
//! tag hash; the client checks the exact tag again, since hashes can collide.

use ferromq_protocol::message::tag_hash;

use crate::error::ClientError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    All,
    Tags(Vec<String>),
}

impl TagFilter {
    pub fn parse(expression: &str) -> Result<TagFilter, ClientError> {
        let expression = expression.trim();
        if expression.is_empty() || expression == "*" {
            return Ok(TagFilter::All);
        }
        let tags: Vec<String> = expression
            .split("||")
            .map(|t| t.trim().to_string())
            .collect();
        if tags.iter().any(|t| t.is_empty() || t == "*") {
            return Err(ClientError::InvalidMessage(format!(
                "bad tag expression {expression:?}: use \"*\" or \"TagA || TagB\""
            )));
        }
        Ok(TagFilter::Tags(tags))
    }

    /// Hashes for the broker; empty means "everything".
    pub fn hashes(&self) -> Vec<u64> {
        match self {
            TagFilter::All => Vec::new(),
            TagFilter::Tags(tags) => tags.iter().map(|t| tag_hash(Some(t))).collect(),
        }
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => tag.is_some_and(|tag| tags.iter().any(|t| t == tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse() {
        assert_eq!(TagFilter::parse("*").unwrap(), TagFilter::All);
        assert_eq!(TagFilter::parse("").unwrap(), TagFilter::All);
        let filter = TagFilter::parse("A || B").unwrap();
        assert!(filter.matches(Some("A")) && filter.matches(Some("B")));
        assert!(!filter.matches(Some("C")) && !filter.matches(None));
        assert_eq!(filter.hashes().len(), 2);
        assert!(TagFilter::parse("A ||").is_err());
    }
}
