"""Every setting is documented where operators look: the README's configuration table."""

from pydantic import AliasChoices

from qmsflow.settings import PROJECT_ROOT, Settings


def _variable(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        assert isinstance(first, str)
        return first
    return f"QMSFLOW_{name.upper()}"


class TestSettingsDocumented:
    def test_readme_names_every_variable(self) -> None:
        """Each setting's environment variable appears in the README."""
        readme = (PROJECT_ROOT / "README.md").read_text("utf-8")
        missing = [_variable(n) for n in Settings.model_fields if _variable(n) not in readme]
        assert not missing, f"README.md does not document {missing}"

    def test_each_setting_names_its_variable(self) -> None:
        """Each field's description starts with the variable that sets it."""
        for name, field in Settings.model_fields.items():
            assert (field.description or "").startswith(_variable(name)), name
