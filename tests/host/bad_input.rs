//! Bad device selection gives typed errors that say what was wrong; nothing panics.
use interlink::fabric::*;
use std::net::{IpAddr, Ipv4Addr};

#[test]
fn unknown_verbs_device_name() {
    let cfg = DeviceConfig {
        provider: ProviderChoice::Verbs,
        name: Some("no_such_rdma_dev".into()),
        ..Default::default()
    };
    match Device::open(&cfg) {
        Err(FabricError::OpenDeviceByName { name, .. }) => assert_eq!(name, "no_such_rdma_dev"),
        other => panic!("expected OpenDeviceByName, got {other:?}"),
    }
}

#[test]
fn address_no_device_serves() {
    let addr = IpAddr::V4(Ipv4Addr::new(198, 19, 254, 253));
    let cfg = DeviceConfig::for_addr(addr).with_provider(ProviderChoice::Verbs);
    match Device::open(&cfg) {
        Err(FabricError::OpenDeviceByAddr { addr: a }) => assert_eq!(a, addr),
        other => panic!("expected OpenDeviceByAddr, got {other:?}"),
    }
    // Auto falls back to the soft provider, which cannot bind an address the host lacks.
    let err = Device::open(&DeviceConfig::for_addr(addr)).unwrap_err();
    assert!(
        matches!(err, FabricError::Soft(soft::SoftError::Bind { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("198.19.254.253"), "{err}");
}

#[test]
fn device_config_needs_a_name_or_address() {
    let cfg = DeviceConfig::default().with_provider(ProviderChoice::Verbs);
    assert!(matches!(
        Device::open(&cfg),
        Err(FabricError::DeviceConfig(_))
    ));
}

#[test]
fn empty_region_is_refused() {
    let net = SimNet::new(3);
    let d = Device::open_sim(&net, "a").unwrap();
    let pd = d.alloc_pd().unwrap();
    assert!(pd.register(0, Access::LOCAL_WRITE).is_err());
}

#[test]
fn provider_choice_parses() {
    assert_eq!(
        "verbs".parse::<ProviderChoice>().unwrap(),
        ProviderChoice::Verbs
    );
    assert!("bogus".parse::<ProviderChoice>().is_err());
}
