import Testing
@testable import StrataLog
