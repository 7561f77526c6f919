// Talk to the agent: a WebRTC test call (RFC 8829 offer/answer, non-trickle ICE).
// The offer is posted once ICE gathering is complete, so the agent's aiortc peer gets every
// candidate in one SDP; the answer comes back the same way. No STUN/TURN: LAN only.
"use strict";

(function () {
  const start = document.getElementById("tc-start");
  const hangupButton = document.getElementById("tc-hangup");
  const statusLine = document.getElementById("tc-status");
  const errorLine = document.getElementById("tc-error");
  const callIdBox = document.getElementById("tc-call-id");
  const audio = document.getElementById("tc-audio");
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  let pc = null;
  let mic = null;
  let callId = null;

  function setStatus(text, live) {
    statusLine.textContent = text;
    statusLine.classList.toggle("tc-live", Boolean(live));
    statusLine.dataset.state = live ? "live" : "idle";
  }

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = !text;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const detail = data && (data.detail || data.error);
      throw new Error(typeof detail === "string" ? detail : "Request failed (" + response.status + ").");
    }
    return data;
  }

  function gatheringComplete(peer) {
    if (peer.iceGatheringState === "complete") {
      return Promise.resolve();
    }
    return new Promise(function (resolve) {
      const timer = setTimeout(resolve, 5000);
      peer.addEventListener("icegatheringstatechange", function () {
        if (peer.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  function cleanUp(text) {
    if (pc) {
      pc.close();
      pc = null;
    }
    if (mic) {
      mic.getTracks().forEach(function (t) { t.stop(); });
      mic = null;
    }
    audio.srcObject = null;
    callId = null;
    start.disabled = false;
    hangupButton.disabled = true;
    setStatus(text || "Call ended.", false);
  }

  async function startCall() {
    showError("");
    start.disabled = true;
    setStatus("Asking for the microphone...", false);
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
      pc = new RTCPeerConnection({ iceServers: [] });
      mic.getAudioTracks().forEach(function (track) { pc.addTrack(track, mic); });
      pc.addEventListener("track", function (event) {
        audio.srcObject = event.streams[0] || new MediaStream([event.track]);
      });
      pc.addEventListener("connectionstatechange", function () {
        if (!pc) {
          return;
        }
        if (pc.connectionState === "connected") {
          setStatus("Connected: speak after the agent's introduction.", true);
        } else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          cleanUp("The call ended.");
        }
      });
      setStatus("Connecting...", false);
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc);
      const answer = await postJson("/api/testcall/offer", {
        sdp: pc.localDescription.sdp,
        type: "offer",
      });
      callId = answer.call_id;
      callIdBox.textContent = callId;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      hangupButton.disabled = false;
    } catch (err) {
      showError(err && err.message ? err.message : String(err));
      cleanUp("Not connected.");
    }
  }

  async function hangUp() {
    const id = callId;
    hangupButton.disabled = true;
    if (id) {
      try {
        await postJson("/api/testcall/hangup", { call_id: id });
      } catch (err) {
        // The call may have ended on the agent's side already; nothing to undo here.
      }
    }
    cleanUp("Call ended.");
  }

  start.addEventListener("click", startCall);
  hangupButton.addEventListener("click", hangUp);
  window.addEventListener("pagehide", function () {
    if (callId) {
      // keepalive: the request outlives the page, so the call's slot is freed at once.
      fetch("/api/testcall/hangup", {
        method: "POST",
        keepalive: true,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ call_id: callId }),
      });
    }
  });
})();
