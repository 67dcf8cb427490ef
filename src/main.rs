fn main() {
    print!("{}", serin::crd::crds_yaml().unwrap());
}
