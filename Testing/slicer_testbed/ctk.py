"""Stand-in for the ``ctk`` module (CTK widgets): classes exist so imports and
``isinstance`` checks work; the fake UI builder gives them their behaviour."""

from qt import QWidget


class ctkCollapsibleButton(QWidget):
    pass


class ctkSliderWidget(QWidget):
    pass


class ctkDoubleSpinBox(QWidget):
    pass


class ctkPathLineEdit(QWidget):
    pass


class ctkDirectoryButton(QWidget):
    pass
