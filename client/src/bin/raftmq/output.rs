//! How `raftmq consume` prints a message: the value alone (default), a kcat-style
//! `--format` string, or one JSON object per line (`--json`).

use std::io::Write;

use raftmq_client::ConsumedMessage;

/// One piece of a `--format` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    Topic,
    Queue,
    Offset,
    Key,
    KeyLen,
    Value,
    ValueLen,
    Timestamp,
    Headers,
}

/// How messages are printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `--format`, parsed.
    Format(Vec<Piece>),
    /// `--json`.
    Json,
}

impl Output {
    /// The default: the value and a newline.
    pub fn value_lines() -> Output {
        Output::Format(vec![Piece::Value, Piece::Text(b"\n".to_vec())])
    }

    /// `--verbose`: queue, offset, timestamp, key, headers and value, tab-separated.
    pub fn verbose() -> Output {
        Output::parse_format("%p\t%o\t%T\t%k\t%h\t%s\n").expect("a valid format")
    }

    /// Parses a kcat-style format: `%t` topic, `%p` queue, `%o` offset, `%k` key,
    /// `%K` key length, `%s` value, `%S` value length, `%T` timestamp (ms), `%h`
    /// headers (`k=v,k=v`), `%%` a percent sign; `\n`, `\t`, `\r`, `\0`, `\\`
    /// escapes.
    pub fn parse_format(format: &str) -> Result<Output, String> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let token = match chars.next() {
                        Some('t') => Piece::Topic,
                        Some('p') => Piece::Queue,
                        Some('o') => Piece::Offset,
                        Some('k') => Piece::Key,
                        Some('K') => Piece::KeyLen,
                        Some('s') => Piece::Value,
                        Some('S') => Piece::ValueLen,
                        Some('T') => Piece::Timestamp,
                        Some('h') => Piece::Headers,
                        Some('%') => {
                            text.push(b'%');
                            continue;
                        }
                        Some(other) => return Err(format!("unknown format token %{other}")),
                        None => return Err("the format ends with a lone %".into()),
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(token);
                }
                '\\' => {
                    let byte = match chars.next() {
                        Some('n') => b'\n',
                        Some('t') => b'\t',
                        Some('r') => b'\r',
                        Some('0') => 0,
                        Some('\\') => b'\\',
                        Some(other) => return Err(format!("unknown escape \\{other}")),
                        None => return Err("the format ends with a lone \\".into()),
                    };
                    text.push(byte);
                }
                c => {
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Output::Format(pieces))
    }

    /// Writes one message.
    pub fn write(&self, out: &mut impl Write, m: &ConsumedMessage) -> std::io::Result<()> {
        match self {
            Output::Json => write_json(out, m),
            Output::Format(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.write_all(t)?,
                        Piece::Topic => out.write_all(m.topic.as_bytes())?,
                        Piece::Queue => write!(out, "{}", m.queue)?,
                        Piece::Offset => write!(out, "{}", m.offset)?,
                        Piece::Key => out.write_all(m.key.as_deref().unwrap_or_default())?,
                        Piece::KeyLen => match &m.key {
                            Some(k) => write!(out, "{}", k.len())?,
                            None => out.write_all(b"-1")?,
                        },
                        Piece::Value => out.write_all(&m.value)?,
                        Piece::ValueLen => write!(out, "{}", m.value.len())?,
                        Piece::Timestamp => write!(out, "{}", m.timestamp_ms)?,
                        Piece::Headers => {
                            for (i, (k, v)) in m.headers.iter().enumerate() {
                                if i > 0 {
                                    out.write_all(b",")?;
                                }
                                out.write_all(k.as_bytes())?;
                                out.write_all(b"=")?;
                                out.write_all(v)?;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// `{"topic":...,"queue":...,"offset":...,"timestamp_ms":...,"key":...,"value":...,
/// "headers":{...}}` and a newline. Keys, values and header values are strings
/// (bytes that are not UTF-8 are replaced with U+FFFD); a missing key is `null`.
fn write_json(out: &mut impl Write, m: &ConsumedMessage) -> std::io::Result<()> {
    let mut line = String::with_capacity(128 + m.value.len());
    line.push_str("{\"topic\":");
    json_string(&mut line, &m.topic);
    line.push_str(&format!(
        ",\"queue\":{},\"offset\":{},\"timestamp_ms\":{},\"key\":",
        m.queue, m.offset, m.timestamp_ms
    ));
    match &m.key {
        Some(k) => json_string(&mut line, &String::from_utf8_lossy(k)),
        None => line.push_str("null"),
    }
    line.push_str(",\"value\":");
    json_string(&mut line, &String::from_utf8_lossy(&m.value));
    line.push_str(",\"headers\":{");
    for (i, (k, v)) in m.headers.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        json_string(&mut line, k);
        line.push(':');
        json_string(&mut line, &String::from_utf8_lossy(v));
    }
    line.push_str("}}\n");
    out.write_all(line.as_bytes())
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message() -> ConsumedMessage {
        ConsumedMessage {
            topic: "orders".into(),
            queue: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from_static(b"he said \"hi\"\n"),
            headers: vec![("trace".into(), Bytes::from_static(b"abc"))],
        }
    }

    fn render(output: &Output) -> String {
        let mut out = Vec::new();
        output.write(&mut out, &message()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn format_tokens_and_escapes_render_each_field() {
        let output = Output::parse_format("%t/%p@%o %T [%k:%K] %S %h\\t%%|%s").unwrap();
        assert_eq!(
            render(&output),
            "orders/2@41 1700000000000 [k1:2] 13 trace=abc\t%|he said \"hi\"\n"
        );
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(Output::parse_format("%x").is_err());
        assert!(Output::parse_format("50%").is_err());
        assert!(Output::parse_format("\\q").is_err());
    }

    #[test]
    fn json_lines_escape_and_carry_every_field() {
        assert_eq!(
            render(&Output::Json),
            "{\"topic\":\"orders\",\"queue\":2,\"offset\":41,\"timestamp_ms\":1700000000000,\
             \"key\":\"k1\",\"value\":\"he said \\\"hi\\\"\\n\",\"headers\":{\"trace\":\"abc\"}}\n"
        );
    }
}
