"""What the tests share: files, processes and checks they build on (one home; tests
import nothing from other test files)."""
