//! How results reach the terminal: aligned tables and `label: value` lists
//! that fit in 80 columns, human-readable sizes and rates, and JSON.
//!
//! Widths are counted in characters, which is right for the ASCII names
//! Sava allows; wide Unicode in free text (descriptions) may misalign.

use anyhow::{Context, Result};
use serde::Serialize;

/// The terminal width tables and lists are fitted into.
pub(crate) const WIDTH: usize = 80;

/// The space between two table columns.
const GAP: &str = "  ";

/// A shrinkable column never gets narrower than this (or its header).
const MIN_COLUMN: usize = 8;

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode the output as json")?;
    println!("{text}");
    Ok(())
}

/// What a column holds, which decides how it lines up and whether it may
/// be cut to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    /// Names and free text: left-aligned, cut in the middle with `…` when
    /// the table is too wide, so both ends of a name stay visible.
    Text,
    /// A short word from a fixed set (`reliable`, `key-shared`): left-aligned,
    /// never cut.
    Word,
    /// Numbers, sizes and ages: right-aligned, never cut.
    Number,
}

/// A table with a header row, fitted into [`WIDTH`] columns when printed.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    kinds: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and kinds.
    pub(crate) fn new(columns: &[(&'static str, Column)]) -> Table {
        Table {
            headers: columns.iter().map(|(header, _)| *header).collect(),
            kinds: columns.iter().map(|(_, kind)| *kind).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.headers.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    /// Prints the table on stdout.
    pub(crate) fn print(&self) {
        print!("{}", self.render(WIDTH));
    }

    /// The table as text, one line per row, at most `width` columns wide
    /// unless the columns that are never cut are wider on their own.
    pub(crate) fn render(&self, width: usize) -> String {
        let widths = self.fitted_widths(width);
        let mut text = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in cells.iter().enumerate() {
                if index > 0 {
                    line.push_str(GAP);
                }
                let cell = truncate_middle(cell, widths[index]);
                let padding = " ".repeat(widths[index] - cell.chars().count());
                let aligned = match self.kinds[index] {
                    Column::Number => format!("{padding}{cell}"),
                    Column::Text | Column::Word => format!("{cell}{padding}"),
                };
                line.push_str(&aligned);
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Each column's natural width, then the widest text column narrowed
    /// one character at a time until the table fits or none can shrink.
    fn fitted_widths(&self, width: usize) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for cells in &self.rows {
            for (index, cell) in cells.iter().enumerate() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }

        let total =
            |widths: &[usize]| widths.iter().sum::<usize>() + GAP.len() * (widths.len() - 1);
        while total(&widths) > width {
            let shrinkable = (0..widths.len())
                .filter(|&index| self.kinds[index] == Column::Text)
                .filter(|&index| widths[index] > MIN_COLUMN.max(self.headers[index].len()))
                .max_by_key(|&index| widths[index]);
            match shrinkable {
                Some(index) => widths[index] -= 1,
                None => break,
            }
        }
        widths
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// `text` cut to `width` characters by replacing its middle with `…`.
pub(crate) fn truncate_middle(text: &str, width: usize) -> String {
    let length = text.chars().count();
    if length <= width {
        return text.to_string();
    }
    let kept = width.saturating_sub(1);
    let head: String = text.chars().take(kept / 2).collect();
    let tail: String = text.chars().skip(length - (kept - kept / 2)).collect();
    format!("{head}…{tail}")
}

/// A `label: value` list, labels aligned, long values wrapped under
/// themselves.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    fields: Vec<(&'static str, String)>,
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields::default()
    }

    /// Adds one field.
    pub(crate) fn add(&mut self, label: &'static str, value: impl Into<String>) -> &mut Fields {
        self.fields.push((label, value.into()));
        self
    }

    /// Prints the list on stdout.
    pub(crate) fn print(&self) {
        print!("{}", self.render(WIDTH));
    }

    /// The list as text, at most `width` columns wide where values have
    /// spaces to break at.
    pub(crate) fn render(&self, width: usize) -> String {
        let label_width = self
            .fields
            .iter()
            .map(|(label, _)| label.len() + 1)
            .max()
            .unwrap_or(0);
        let value_width = width.saturating_sub(label_width + 1).max(20);
        let mut text = String::new();
        for (label, value) in &self.fields {
            let value = if value.is_empty() {
                "-"
            } else {
                value.as_str()
            };
            for (index, line) in wrap(value, value_width).iter().enumerate() {
                let label = if index == 0 {
                    format!("{label}:")
                } else {
                    String::new()
                };
                text.push_str(&format!("{label:<label_width$} {line}\n"));
            }
        }
        text
    }
}

/// `text` split into lines of at most `width` characters, breaking at the
/// last space that fits, or mid-word when a word is longer than a line.
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while rest.len() > width {
        let cut = rest[..=width]
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|&at| at > 0);
        let (line, skip) = match cut {
            Some(at) => (rest[..at].iter().collect::<String>(), at + 1),
            None => (rest[..width].iter().collect::<String>(), width),
        };
        lines.push(line.trim_end().to_string());
        rest.drain(..skip);
    }
    lines.push(rest.into_iter().collect());
    lines
}

/// A byte count for people: `512 B`, `1.2 KiB`, `3.0 MiB`, `1.5 GiB`.
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A per-second rate for people: `0/s`, `12/s`, `3.4/s`.
pub(crate) fn format_rate(per_second: f64) -> String {
    if per_second == 0.0 || per_second >= 100.0 {
        format!("{per_second:.0}/s")
    } else {
        format!("{per_second:.1}/s")
    }
}

/// `yes` or `no`.
pub(crate) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrow_table_keeps_its_natural_widths_and_aligns_numbers_right() {
        let mut table = Table::new(&[("NAME", Column::Text), ("COUNT", Column::Number)]);
        table.row(vec!["alpha".into(), "7".into()]);
        table.row(vec!["b".into(), "1234567".into()]);
        assert_eq!(
            table.render(80),
            "NAME     COUNT\nalpha        7\nb      1234567\n"
        );
    }

    #[test]
    fn a_wide_table_cuts_its_widest_text_column_to_fit_and_keeps_words_and_numbers() {
        let mut table = Table::new(&[
            ("TOPIC", Column::Text),
            ("TYPE", Column::Word),
            ("SIZE", Column::Number),
        ]);
        let topic = "/default/".to_string() + &"x".repeat(100) + "-part-7";
        table.row(vec![topic, "key-shared".into(), "1.0 MiB".into()]);
        let text = table.render(40);
        assert!(
            text.lines().all(|line| line.chars().count() <= 40),
            "{text}"
        );
        assert!(text.contains("/default/…xx-part-7"), "{text}");
        assert!(
            text.contains("key-shared") && text.contains("1.0 MiB"),
            "{text}"
        );
    }

    #[test]
    fn cutting_in_the_middle_keeps_both_ends() {
        assert_eq!(truncate_middle("/ns1/orders-part-12", 13), "/ns1/o…art-12");
        assert_eq!(truncate_middle("short", 13), "short");
        assert_eq!(truncate("fingerprint", 6), "finge…");
    }

    #[test]
    fn long_values_wrap_at_spaces_under_their_label() {
        let mut fields = Fields::new();
        fields.add("errors", "one two three four five six seven");
        fields.add("empty", "");
        let text = fields.render(30);
        assert_eq!(
            text,
            "errors: one two three four\n        five six seven\nempty:  -\n"
        );
    }

    #[test]
    fn a_word_longer_than_a_line_is_cut() {
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("", 3), vec![""]);
    }

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1_258_291), "1.2 MiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn rates_keep_a_decimal_only_when_small() {
        assert_eq!(format_rate(0.0), "0/s");
        assert_eq!(format_rate(3.44), "3.4/s");
        assert_eq!(format_rate(1234.5), "1234/s");
    }
}
