//! SQL92 message selectors over user properties (RocketMQ's `MessageSelector.bySql`):
//! `region = 'eu' AND (amount > 100 OR vip IS NOT NULL)`.
//!
//! Grammar (keywords are case-insensitive):
//! ```text
//! expr      := and ( OR and )*
//! and       := not ( AND not )*
//! not       := NOT not | primary
//! primary   := '(' expr ')' | TRUE | FALSE
//!            | ident ( '=' | '<>' | '!=' | '<' | '<=' | '>' | '>=' ) literal
//!            | ident [NOT] IN '(' literal ( ',' literal )* ')'
//!            | ident [NOT] BETWEEN literal AND literal
//!            | ident IS [NOT] NULL
//! literal   := 'text' ('' inside is a quote) | number (integer or decimal, signed)
//! ident     := letter or _, then letters, digits, _ or .
//! ```
//! Evaluation uses three-valued logic: a comparison with a missing property (or a property
//! that is not a number where a number is expected) is *unknown*, `NOT unknown` is unknown,
//! and only a *true* result selects the message. The message tag is the property `TAGS`.
//!
//! The parser takes untrusted text (it runs on the broker), so it has limits: 4096 bytes of
//! text, 64 levels of nesting, 1024 items in an `IN` list.

use std::collections::BTreeMap;
use std::fmt;

pub const MAX_SELECTOR_BYTES: usize = 4096;
const MAX_DEPTH: usize = 64;
const MAX_IN_ITEMS: usize = 1024;

/// A syntax error, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL selector: {message} at byte {at}")]
pub struct SelectorError {
    pub message: String,
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Const(bool),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(String, Compare, Literal),
    In {
        name: String,
        values: Vec<Literal>,
        negated: bool,
    },
    Between {
        name: String,
        low: Literal,
        high: Literal,
        negated: bool,
    },
    IsNull {
        name: String,
        negated: bool,
    },
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    expr: Expr,
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compare::Eq => "=",
            Compare::Ne => "<>",
            Compare::Lt => "<",
            Compare::Le => "<=",
            Compare::Gt => ">",
            Compare::Ge => ">=",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(f64),
    Op(Compare),
    Open,
    Close,
    Comma,
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, SelectorError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let error = |message: &str, at: usize| SelectorError {
        message: message.to_string(),
        at,
    };
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                tokens.push((Token::Open, start));
                i += 1;
            }
            b')' => {
                tokens.push((Token::Close, start));
                i += 1;
            }
            b',' => {
                tokens.push((Token::Comma, start));
                i += 1;
            }
            b'=' => {
                tokens.push((Token::Op(Compare::Eq), start));
                i += 1;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                tokens.push((Token::Op(Compare::Ne), start));
                i += 2;
            }
            b'<' => {
                let (op, len) = match bytes.get(i + 1) {
                    Some(b'=') => (Compare::Le, 2),
                    Some(b'>') => (Compare::Ne, 2),
                    _ => (Compare::Lt, 1),
                };
                tokens.push((Token::Op(op), start));
                i += len;
            }
            b'>' => {
                let (op, len) = match bytes.get(i + 1) {
                    Some(b'=') => (Compare::Ge, 2),
                    _ => (Compare::Gt, 1),
                };
                tokens.push((Token::Op(op), start));
                i += len;
            }
            b'\'' => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(error("unterminated string", start)),
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                            value.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(b) => {
                            value.push(*b);
                            i += 1;
                        }
                    }
                }
                let value =
                    String::from_utf8(value).map_err(|_| error("string is not UTF-8", start))?;
                tokens.push((Token::Text(value), start));
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                i += 1;
                while bytes
                    .get(i)
                    .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                let number: f64 = text[start..i]
                    .parse()
                    .map_err(|_| error("malformed number", start))?;
                if !number.is_finite() {
                    return Err(error("number out of range", start));
                }
                tokens.push((Token::Number(number), start));
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                while bytes
                    .get(i)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
                {
                    i += 1;
                }
                tokens.push((Token::Ident(text[start..i].to_string()), start));
            }
            _ => return Err(error("unexpected character", start)),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> SelectorError {
        SelectorError {
            message: message.into(),
            at: self.tokens.get(self.at).map_or(self.end, |(_, at)| *at),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(id)) if id.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        let found = self.keyword(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), SelectorError> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            Err(self.error(format!("expected {word}")))
        }
    }

    fn deeper(&mut self) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        self.deeper()?;
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let mut left = self.not()?;
        while self.eat_keyword("AND") {
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, SelectorError> {
        if self.eat_keyword("NOT") {
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn literal(&mut self) -> Result<Literal, SelectorError> {
        match self.next() {
            Some(Token::Text(text)) => Ok(Literal::Text(text)),
            Some(Token::Number(number)) => Ok(Literal::Number(number)),
            _ => {
                self.at -= 1;
                Err(self.error("expected a 'string' or a number"))
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, SelectorError> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::Close) {
                self.at -= 1;
                return Err(self.error("expected )"));
            }
            return Ok(inner);
        }
        if self.eat_keyword("TRUE") {
            return Ok(Expr::Const(true));
        }
        if self.eat_keyword("FALSE") {
            return Ok(Expr::Const(false));
        }
        let name = match self.next() {
            Some(Token::Ident(name))
                if !["AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL"]
                    .iter()
                    .any(|k| name.eq_ignore_ascii_case(k)) =>
            {
                name
            }
            _ => {
                self.at -= 1;
                return Err(self.error("expected a property name"));
            }
        };
        if let Some(Token::Op(op)) = self.peek().cloned() {
            self.at += 1;
            let value = self.literal()?;
            return Ok(Expr::Compare(name, op, value));
        }
        if self.eat_keyword("IS") {
            let negated = self.eat_keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull { name, negated });
        }
        let negated = self.eat_keyword("NOT");
        if self.eat_keyword("IN") {
            if self.next() != Some(Token::Open) {
                self.at -= 1;
                return Err(self.error("expected ( after IN"));
            }
            let mut values = vec![self.literal()?];
            while self.peek() == Some(&Token::Comma) {
                self.at += 1;
                values.push(self.literal()?);
                if values.len() > MAX_IN_ITEMS {
                    return Err(self.error(format!("more than {MAX_IN_ITEMS} values in IN")));
                }
            }
            if self.next() != Some(Token::Close) {
                self.at -= 1;
                return Err(self.error("expected ) after the IN list"));
            }
            return Ok(Expr::In {
                name,
                values,
                negated,
            });
        }
        if self.eat_keyword("BETWEEN") {
            let low = self.literal()?;
            self.expect_keyword("AND")?;
            let high = self.literal()?;
            return Ok(Expr::Between {
                name,
                low,
                high,
                negated,
            });
        }
        Err(self.error("expected a comparison, IN, BETWEEN or IS [NOT] NULL"))
    }
}

/// Compares a property value with a literal: numbers as numbers (unknown if the value is not
/// one), text as text. `None` is unknown.
fn compare(value: &str, op: Compare, literal: &Literal) -> Option<bool> {
    let ordering = match literal {
        Literal::Number(number) => value.trim().parse::<f64>().ok()?.partial_cmp(number)?,
        Literal::Text(text) => value.cmp(text.as_str()),
    };
    Some(match op {
        Compare::Eq => ordering.is_eq(),
        Compare::Ne => ordering.is_ne(),
        Compare::Lt => ordering.is_lt(),
        Compare::Le => ordering.is_le(),
        Compare::Gt => ordering.is_gt(),
        Compare::Ge => ordering.is_ge(),
    })
}

fn eval(expr: &Expr, lookup: &dyn Fn(&str) -> Option<String>) -> Option<bool> {
    match expr {
        Expr::Const(value) => Some(*value),
        Expr::And(left, right) => match (eval(left, lookup), eval(right, lookup)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::Or(left, right) => match (eval(left, lookup), eval(right, lookup)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::Not(inner) => eval(inner, lookup).map(|value| !value),
        Expr::Compare(name, op, literal) => compare(&lookup(name)?, *op, literal),
        Expr::In {
            name,
            values,
            negated,
        } => {
            let value = lookup(name)?;
            let mut unknown = false;
            for literal in values {
                match compare(&value, Compare::Eq, literal) {
                    Some(true) => return Some(!negated),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(*negated)
        }
        Expr::Between {
            name,
            low,
            high,
            negated,
        } => {
            let value = lookup(name)?;
            let inside = compare(&value, Compare::Ge, low)? && compare(&value, Compare::Le, high)?;
            Some(inside != *negated)
        }
        Expr::IsNull { name, negated } => Some(lookup(name).is_none() != *negated),
    }
}

impl Selector {
    /// Parses a selector; errors say what was expected and where.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError {
                message: format!("longer than {MAX_SELECTOR_BYTES} bytes"),
                at: MAX_SELECTOR_BYTES,
            });
        }
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err(SelectorError {
                message: "empty selector".into(),
                at: 0,
            });
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            end: text.len(),
            depth: 0,
        };
        let expr = parser.or()?;
        if parser.at < parser.tokens.len() {
            return Err(parser.error("unexpected text after the expression"));
        }
        Ok(Selector { expr })
    }

    /// Whether a message with these properties (and tag, as `TAGS`) is selected.
    pub fn matches(&self, properties: &BTreeMap<String, String>, tag: Option<&str>) -> bool {
        let lookup = |name: &str| {
            if name == "TAGS" {
                return tag.map(str::to_string);
            }
            properties.get(name).cloned()
        };
        eval(&self.expr, &lookup) == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(sql: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(sql)
            .unwrap()
            .matches(&props(pairs), Some("TagA"))
    }

    #[test]
    fn comparisons_and_logic() {
        assert!(selects("a > 5", &[("a", "7")]));
        assert!(!selects("a > 5", &[("a", "3")]));
        assert!(!selects("a > 5", &[]), "missing is unknown, not true");
        assert!(!selects("NOT (a > 5)", &[]), "NOT unknown is unknown");
        assert!(selects("NOT (a > 5)", &[("a", "1")]));
        assert!(selects(
            "region = 'eu' AND (amount >= 100.5 OR vip IS NOT NULL)",
            &[("region", "eu"), ("vip", "1")]
        ));
        assert!(!selects(
            "region = 'eu' AND amount >= 100.5",
            &[("region", "eu"), ("amount", "99")]
        ));
        assert!(selects("a <> 'x' or b = 1", &[("b", "1")]));
        assert!(selects("name = 'O''Brien'", &[("name", "O'Brien")]));
        assert!(!selects("a > 5", &[("a", "not a number")]));
        assert!(selects("TAGS = 'TagA'", &[]));
        assert!(selects("TRUE", &[]));
        assert!(selects("x IS NULL", &[]));
    }

    #[test]
    fn in_and_between() {
        assert!(selects("c IN ('a', 'b')", &[("c", "b")]));
        assert!(!selects("c IN ('a', 'b')", &[("c", "z")]));
        assert!(selects("c NOT IN ('a', 'b')", &[("c", "z")]));
        assert!(!selects("c NOT IN ('a')", &[]));
        assert!(selects("n BETWEEN 1 AND 10", &[("n", "10")]));
        assert!(!selects("n BETWEEN 1 AND 10", &[("n", "11")]));
        assert!(selects("n NOT BETWEEN 1 AND 10", &[("n", "-3")]));
    }

    #[test]
    fn syntax_errors_say_where() {
        for (sql, at) in [
            ("a >", 3),
            ("a = 'open", 4),
            ("(a = 1", 6),
            ("a = 1 b", 6),
            ("a IN ()", 6),
            ("a ~ 1", 2),
            ("", 0),
            ("AND = 1", 0),
        ] {
            let err = Selector::parse(sql).unwrap_err();
            assert_eq!(err.at, at, "{sql:?}: {err}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(Selector::parse(&deep)
            .unwrap_err()
            .message
            .contains("nested"));
        let nots = format!("{}a = 1", "NOT ".repeat(100));
        assert!(Selector::parse(&nots).is_err());
        assert!(Selector::parse(&"a".repeat(5000)).is_err());
    }
}
