// StrataTesting — crash-injection harness (issue 5). Placeholder until the harness lands.
import StrataIO
