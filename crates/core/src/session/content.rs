//! Message content: DATA and BDAT commands, feeding their bytes to the
//! readers in [`super::data`], and handing the finished message over.

use super::*;

impl Session {
    pub(super) fn data(&mut self) {
        let tx = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(tx) if tx.bdat.is_some() => {
                self.state = State::Mail(tx);
                return self.reply(Reply::new(503, status::INVALID_COMMAND, "DATA not allowed after BDAT"));
            }
            State::Mail(tx) if tx.recipients.is_empty() => {
                self.state = State::Mail(tx);
                return self.reply(Reply::new(554, status::INVALID_COMMAND, "No valid recipients"));
            }
            State::Mail(tx) => tx,
            other => {
                self.state = other;
                return self.reply(Reply::new(503, status::INVALID_COMMAND, "Need MAIL and RCPT first"));
            }
        };
        let reader = DataReader::new(self.line_limit(), self.config.max_message_size);
        self.state = State::Data(tx, reader);
        self.reply(Reply::bare(354, vec!["End data with <CR><LF>.<CR><LF>".into()]));
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's bytes follow the command whatever we answer, so every
        // branch reads them; otherwise they would be taken for commands.
        let (tx, refusal) = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(tx) if tx.recipients.is_empty() => (None, Some(Reply::new(554, status::INVALID_COMMAND, "No valid recipients"))),
            State::Mail(tx) if tx.check.refused.is_some() => (None, tx.check.refused),
            State::Mail(mut tx) => {
                if tx.size + size > self.config.max_message_size {
                    (None, Some(Reply::new(552, status::MSG_TOO_BIG, "Message size exceeds fixed maximum message size")))
                } else {
                    tx.bdat.get_or_insert_with(BdatScanner::default);
                    (Some(tx), None)
                }
            }
            // Whatever the state was, a refused chunk leaves no transaction.
            _ => (None, Some(Reply::new(503, status::INVALID_COMMAND, "Need MAIL and RCPT before BDAT"))),
        };
        self.state = State::Chunk { tx, remaining: size, last, refusal };
        if size == 0 {
            self.finish_chunk();
        }
    }

    /// Reads DATA content from `pos`.
    pub(super) fn feed_data(&mut self, pos: usize) -> Step {
        let State::Data(tx, reader) = &mut self.state else {
            return Step::Wait(pos);
        };
        match reader.feed(&self.input[pos..], &mut tx.body) {
            // Keep the unconsumed partial line for the next read.
            DataProgress::NeedMore { consumed } => Step::Wait(pos + consumed),
            DataProgress::Done { consumed } => {
                let State::Data(tx, reader) = std::mem::replace(&mut self.state, State::Ready) else {
                    return Step::Wait(pos);
                };
                self.finish_message(tx, reader.check);
                Step::Continue(pos + consumed)
            }
        }
    }

    pub(super) fn feed_chunk(&mut self, pos: usize) -> Step {
        let max_line = self.line_limit();
        let State::Chunk { tx, remaining, .. } = &mut self.state else {
            return Step::Wait(pos);
        };
        let available = (self.input.len() - pos) as u64;
        let take = (*remaining).min(available) as usize;
        let bytes = &self.input[pos..pos + take];
        if let Some(tx) = tx {
            if let Some(scanner) = tx.bdat.as_mut() {
                scanner.scan(bytes, max_line, &mut tx.check);
            }
            if tx.check.refused.is_none() {
                tx.body.extend_from_slice(bytes);
            }
            tx.size += take as u64;
        }
        *remaining -= take as u64;
        if *remaining > 0 {
            return Step::Wait(pos + take);
        }
        self.finish_chunk();
        Step::Continue(pos + take)
    }

    pub(super) fn finish_chunk(&mut self) {
        let State::Chunk { tx, last, refusal, .. } = std::mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        if let Some(reply) = refusal {
            if self.info.helo.is_none() {
                self.state = State::Greeted;
            }
            // RFC 3030 §2: a failed chunk fails the transaction.
            return self.reply(reply);
        }
        let Some(mut tx) = tx else { return };
        if !last && let Some(reply) = tx.check.refused {
            // RFC 3030 §2: a failed chunk fails the transaction.
            return self.reply(reply);
        }
        if !last {
            let n = tx.size;
            self.state = State::Mail(tx);
            return self.reply(Reply::new(250, status::OK, format!("{n} octets received")));
        }
        if let Some(scanner) = tx.bdat.take() {
            scanner.finish(&mut tx.check);
        }
        let check = std::mem::take(&mut tx.check);
        self.finish_message(tx, check);
    }

    fn finish_message(&mut self, tx: Transaction, check: ContentCheck) {
        if let Some(err) = check.error() {
            self.state = State::Ready;
            let reply = match err {
                ContentError::TooBig => Reply::new(552, status::MSG_TOO_BIG, "Message size exceeds fixed maximum message size"),
                ContentError::Refused => check.refused.clone().unwrap_or_else(over_budget_reply),
                ContentError::BareLineEnding => {
                    Reply::new(550, status::MEDIA, "Message refused: bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)")
                }
                ContentError::Nul => Reply::new(550, status::MEDIA, "Message refused: NUL character in content"),
                ContentError::LineTooLong => {
                    Reply::new(550, status::MEDIA, format!("Message refused: line longer than {} octets", self.line_limit()))
                }
            };
            return self.reply(reply);
        }
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            body: tx.params.body.unwrap_or(BodyType::SevenBit),
            smtputf8: tx.params.smtputf8,
            ret: tx.params.ret,
            envid: tx.params.envid,
            client: ClientInfo {
                ip: self.info.client_ip,
                helo: self.info.helo.clone().unwrap_or_default(),
                authenticated_as: self.info.authenticated_as.clone(),
                tls: self.info.tls.clone(),
                listener: self.config.role.as_str().to_string(),
            },
            received_at: 0,
            delay_warned: false,
            quarantine: false,
        };
        self.state = State::Enqueuing;
        self.actions.push(Action::Enqueue(Box::new(Incoming { envelope, data: tx.body, long_lines: check.long_lines })));
    }
}
