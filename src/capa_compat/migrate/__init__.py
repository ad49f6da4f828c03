"""The codemod: moves legacy imports and settings onto capa_compat, driven by shims/."""
