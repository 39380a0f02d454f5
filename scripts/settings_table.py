"""Print the settings table of docs/configuration.md from the settings object (tests/test_docs.py checks it)."""

from shared.settings import Settings, as_environment_value

print("| variable | default | meaning |")
print("| --- | --- | --- |")
for name, field in Settings.model_fields.items():
    print(f"| `LOOKALIKE_{name.upper()}` | `{as_environment_value(field.default)}` | {field.description} |")
