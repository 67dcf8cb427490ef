fn main() { println!("{}", serde_json::json!({"ok": true})); }
