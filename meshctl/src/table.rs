//! Column-aligned text tables laid out as Go's `text/tabwriter` lays out istioctl's: every
//! column but the last is padded to its widest cell plus a fixed gap, so output (and
//! scripts reading it) look the same as with istioctl.

/// A table under construction.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
    padding: usize,
}

impl Table {
    /// A table with these column titles and `padding` spaces between columns (istioctl
    /// uses 5 for clusters, routes and endpoints, 1 for listeners).
    pub fn new(header: &[&str], padding: usize) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
            padding,
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Rows added so far, without the header.
    #[cfg(test)]
    pub fn rows(&self) -> usize {
        self.rows.len() - 1
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            // The last cell of a row is not part of a column (tabwriter's rule).
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] + self.padding - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every cell starts where its column starts, on every line, whatever the widths.
        #[test]
        fn cells_line_up(
            rows in prop::collection::vec(prop::collection::vec("[a-zA-Z0-9|./*]{0,14}", 4), 1..8),
            padding in 1usize..6,
        ) {
            let mut t = Table::new(&["A", "B B", "C", "D"], padding);
            for r in &rows {
                t.row(r.clone());
            }
            let out = t.render();
            let lines: Vec<&str> = out.lines().collect();
            prop_assert_eq!(lines.len(), rows.len() + 1);
            let all: Vec<Vec<String>> = std::iter::once(vec!["A".into(), "B B".into(), "C".into(), "D".into()])
                .chain(rows.iter().cloned())
                .collect();
            let mut offset = 0;
            for col in 0..4 {
                for (line, cells) in lines.iter().zip(&all) {
                    let cell: String = line.chars().skip(offset).take(cells[col].chars().count()).collect();
                    prop_assert_eq!(&cell, &cells[col]);
                }
                offset += all.iter().map(|r| r[col].chars().count()).max().unwrap_or(0) + padding;
            }
        }
    }

    #[test]
    fn lays_out_like_tabwriter() {
        // istioctl's own golden output for a gateway's routes, empty last cells included.
        let mut t = Table::new(
            &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
            5,
        );
        t.row([
            "http.8080",
            "httpbin.example.com:80",
            "httpbin.example.com",
            "/get*",
            "httpbin.default",
        ]);
        t.row(["", "backend", "*", "/stats/prometheus*", ""]);
        assert_eq!(
            t.render(),
            "NAME          VHOST NAME                 DOMAINS                 MATCH                  VIRTUAL SERVICE\n\
             http.8080     httpbin.example.com:80     httpbin.example.com     /get*                  httpbin.default\n              \
             backend                    *                       /stats/prometheus*     \n"
        );
        assert_eq!(t.rows(), 2);
    }
}
