//! Fleet plans on a library scenario: rescaled groups, shards, ports and gateways.

use virtual_meter::fleet::{FleetPlan, ModbusLayout, Shard, GATEWAY_UNITS};

use crate::common::scenario;

const FLEET: &str = "scenarios/library/network/grid-wide-sag-fleet.yaml";

#[test]
fn shards_of_a_rescaled_fleet_agree_with_sim_mode_ids() {
    let sc = scenario(FLEET);
    let base = "127.0.0.1:15020".parse().unwrap();
    let mut seen = Vec::new();
    for index in 0..3 {
        let shard = Shard { index, count: 3 };
        let plan =
            FleetPlan::new(&sc, Some(10_000), shard, ModbusLayout::Gateway { base }).unwrap();
        let counts: Vec<u32> = plan.scenario.groups.iter().map(|g| g.count).collect();
        assert_eq!(counts, vec![3334, 3333, 3333]);
        assert_eq!(plan.total, 10_000);
        for (k, m) in plan.meters.iter().enumerate() {
            // The id a rescaled sim-mode run gives this meter is its fleet id.
            assert_eq!(m.which.id(&plan.scenario), m.id);
            let ep = m.modbus.unwrap();
            let k = k as u32;
            assert_eq!(u32::from(ep.addr.port()), 15020 + k / GATEWAY_UNITS);
            assert_eq!(u32::from(ep.unit.unwrap()), k % GATEWAY_UNITS + 1);
        }
        let listeners = plan.listeners();
        assert_eq!(listeners.len(), plan.meters.len().div_ceil(247));
        assert!(listeners.iter().all(|(_, ms)| ms.len() <= 247));
        seen.extend(plan.meters.iter().map(|m| m.id));
    }
    assert_eq!(seen, (0..10_000).collect::<Vec<u32>>());
}

#[test]
fn port_per_meter_counts_up_and_refuses_to_wrap() {
    let sc = scenario(FLEET);
    let base = "127.0.0.1:20000".parse().unwrap();
    let plan = FleetPlan::new(&sc, None, Shard::ALL, ModbusLayout::PortPerMeter { base }).unwrap();
    assert_eq!(plan.meters.len(), 1200);
    assert_eq!(plan.meters[1199].modbus.unwrap().addr.port(), 21199);
    assert!(plan.meters.iter().all(|m| m.modbus.unwrap().unit.is_none()));
    let high = "127.0.0.1:65000".parse().unwrap();
    let err = FleetPlan::new(
        &sc,
        None,
        Shard::ALL,
        ModbusLayout::PortPerMeter { base: high },
    )
    .unwrap_err();
    assert!(err.to_string().contains("past 65535"), "{err}");
    assert!(FleetPlan::new(&sc, Some(0), Shard::ALL, ModbusLayout::None).is_err());
    let zero = "127.0.0.1:0".parse().unwrap();
    let err =
        FleetPlan::new(&sc, None, Shard::ALL, ModbusLayout::Gateway { base: zero }).unwrap_err();
    assert!(err.to_string().contains("cannot be 0"), "{err}");
    // One gateway is one listener: port 0 lets the system pick it.
    let one = FleetPlan::new(
        &sc,
        Some(247),
        Shard::ALL,
        ModbusLayout::Gateway { base: zero },
    );
    assert_eq!(one.unwrap().listeners().len(), 1);
}
