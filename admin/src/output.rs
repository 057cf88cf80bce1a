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

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text: left-aligned, truncated with `…` when the table is too wide.
    Left,
    /// Numbers, sizes and ages: right-aligned, never truncated.
    Right,
}

/// A table with a header row, fitted into [`WIDTH`] columns when printed.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(header, _)| *header).collect(),
            aligns: columns.iter().map(|(_, align)| *align).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len(), "a row has one cell per column");
        self.rows.push(cells);
    }

    /// Prints the table on stdout.
    pub(crate) fn print(&self) {
        print!("{}", self.render(WIDTH));
    }

    /// The table as text, one line per row, at most `width` columns wide
    /// unless the right-aligned columns alone are wider.
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
                let cell = truncate(cell, widths[index]);
                let padding = widths[index] - cell.chars().count();
                match self.aligns[index] {
                    Align::Left => line.push_str(&format!("{cell}{}", " ".repeat(padding))),
                    Align::Right => line.push_str(&format!("{}{cell}", " ".repeat(padding))),
                }
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

        let total = |widths: &[usize]| widths.iter().sum::<usize>() + GAP.len() * (widths.len() - 1);
        while total(&widths) > width {
            let shrinkable = (0..widths.len())
                .filter(|&index| self.aligns[index] == Align::Left)
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
        let label_width = self.fields.iter().map(|(label, _)| label.len() + 1).max().unwrap_or(0);
        let value_width = width.saturating_sub(label_width + 1).max(20);
        let mut text = String::new();
        for (label, value) in &self.fields {
            let value = if value.is_empty() { "-" } else { value.as_str() };
            for (index, line) in wrap(value, value_width).iter().enumerate() {
                let label = if index == 0 { format!("{label}:") } else { String::new() };
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
        let cut = rest[..=width].iter().rposition(|c| *c == ' ').filter(|&at| at > 0);
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
        let mut table = Table::new(&[("NAME", Align::Left), ("COUNT", Align::Right)]);
        table.row(vec!["alpha".into(), "7".into()]);
        table.row(vec!["b".into(), "1234567".into()]);
        assert_eq!(
            table.render(80),
            "NAME         COUNT\nalpha            7\nb          1234567\n"
        );
    }

    #[test]
    fn a_wide_table_truncates_its_widest_text_column_to_fit() {
        let mut table = Table::new(&[("TOPIC", Align::Left), ("SIZE", Align::Right)]);
        table.row(vec!["/default/".to_string() + &"x".repeat(100), "1.0 MiB".into()]);
        let text = table.render(40);
        assert!(text.lines().all(|line| line.chars().count() <= 40), "{text}");
        assert!(text.contains('…'));
        assert!(text.contains("1.0 MiB"));
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
