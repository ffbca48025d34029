import Testing
@testable import StrataTesting
