"""The jumpgate Textual dashboard."""
