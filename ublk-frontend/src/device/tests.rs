use super::*;

#[test]
fn default_options_are_valid() {
    DeviceOptions::new(1 << 30).validate().unwrap();
}

#[test]
fn size_must_be_a_positive_multiple_of_the_block_size() {
    let mut options = DeviceOptions::new(4096 + 512);
    assert!(options.validate().is_err());
    options.logical_block_size = 512;
    options.validate().unwrap();
    assert!(DeviceOptions::new(0).validate().is_err());
}

#[test]
fn only_512_and_4096_byte_blocks_are_accepted() {
    let mut options = DeviceOptions::new(1 << 20);
    options.logical_block_size = 1024;
    assert!(options.validate().is_err());
}

#[test]
fn params_describe_size_blocks_and_discard() {
    let mut options = DeviceOptions::new(1 << 30);
    options.logical_block_size = 512;
    let params = options.params(512 << 10);
    assert_eq!(params.basic.dev_sectors, (1 << 30) >> 9);
    assert_eq!(params.basic.logical_bs_shift, 9);
    assert_eq!(params.basic.max_sectors, 1024);
    assert_ne!(params.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
    assert_ne!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
    assert_eq!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
}

#[test]
fn read_only_devices_say_so_and_offer_no_discard() {
    let mut options = DeviceOptions::new(1 << 30);
    options.read_only = true;
    let params = options.params(512 << 10);
    assert_ne!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
    assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
}
