import Testing
@testable import StrataPool

@Suite struct PolicyTests {
    @Test func defaultPolicyIsValid() {
        #expect(PoolPolicy().validationProblems().isEmpty)
    }

    @Test func badValuesAreNamed() {
        var policy = PoolPolicy()
        policy.spillThresholdPercent = 0
        policy.smallBlockCutoffBytes = 5000
        policy.migrateLowPercent = 90
        let problems = policy.validationProblems()
        #expect(problems.count == 3)
        #expect(problems.contains { $0.hasPrefix("spill-threshold=0") })
        #expect(problems.contains { $0.hasPrefix("small-block-cutoff=5000") })
        #expect(problems.contains { $0.hasPrefix("migrate-low=90") })
    }

    @Test func roleNamesRoundTrip() {
        for role in DeviceRole.allCases { #expect(DeviceRole(name: role.name) == role) }
        #expect(DeviceRole(name: "special") == nil)
    }
}
