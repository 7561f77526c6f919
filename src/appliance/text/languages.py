"""The few sentences the agent says in languages other than English, and how to voice them.

A caller who speaks another language is put through to staff (issue 11); before the transfer
they hear "One moment, please. I'll connect you with a member of our staff." in their language
where we have it (:data:`HOLD_TEXTS`, by ISO 639-1 code). The TTS voices each of these with
the espeak-ng language that phonemises it (:func:`tts_language`: Kokoro's G2P is espeak-ng;
codes from ``espeak-ng --voices``), so the sentence is not read with English letter-to-sound
rules. Every other utterance is English.

Shared by the agent plane (which picks the sentence) and the models plane (which voices it),
so it lives in the text layer below both.
"""

from __future__ import annotations

#: The hold sentence, by ISO 639-1 language code.
HOLD_TEXTS: dict[str, str] = {
    "es": "Un momento, por favor. Le comunico con una persona del personal.",
    "zh": "请稍等，我为您转接工作人员。",
    "vi": "Xin vui lòng chờ một chút. Tôi sẽ chuyển cuộc gọi đến nhân viên.",
    "tl": "Sandali lang po. Ikokonekta ko kayo sa isang kawani.",
    "fr": "Un instant, s'il vous plaît. Je vous mets en relation avec un membre du personnel.",
    "ar": "لحظة من فضلك. سأحولك إلى أحد الموظفين.",
    "ko": "잠시만 기다려 주세요. 직원에게 연결해 드리겠습니다.",
    "pt": "Um momento, por favor. Vou transferir a sua chamada para um membro da equipe.",
}

#: espeak-ng language for each ISO 639-1 code above. Tagalog has no espeak-ng voice; its
#: spelling is close to phonemic, so the English rules read it acceptably.
ESPEAK_LANGUAGES: dict[str, str] = {
    "es": "es",
    "zh": "cmn",
    "vi": "vi",
    "tl": "en-us",
    "fr": "fr-fr",
    "ar": "ar",
    "ko": "ko",
    "pt": "pt-br",
}

_BY_TEXT = {text: ESPEAK_LANGUAGES[code] for code, text in HOLD_TEXTS.items()}


def tts_language(text: str) -> str:
    """The espeak-ng language to voice ``text`` with: ``en-us`` unless it is a hold sentence."""
    return _BY_TEXT.get(text.strip(), "en-us")
