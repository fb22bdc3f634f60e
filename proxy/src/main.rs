use aoai_proxy::config::Config;
fn main() {
    let _ = Config::from_process_env();
}
