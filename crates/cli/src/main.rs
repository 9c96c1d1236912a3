//! `conduit`: one binary, many subcommands.

fn main() {
    println!("conduit");
}
